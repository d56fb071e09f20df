"""A self-contained mail-gateway lab: namespaces, real Postfix and Dovecot, dynscreen.

``python -m dynscreen.control.lab demo`` (``make demo``) builds it, plays attacks
next to an honest client and shows what dynscreen blocks; the end-to-end tests
(tests/test_e2e_*.py) drive the same lab with their own scenarios.
"""

from dynscreen.control.lab.lab import LabError, MailLab, auth_plain, mail_lab
from dynscreen.control.lab.mail import DOMAIN, USERS, address

__all__ = ["DOMAIN", "USERS", "LabError", "MailLab", "address", "auth_plain", "mail_lab"]
