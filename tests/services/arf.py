"""A complaint as a feedback loop sends it (RFC 5965), for the end-to-end
complaint tests through Postfix and Sendmail."""

from __future__ import annotations


def complaint(delivered: bytes, to: str) -> bytes:
    """An ARF report to ``to`` with the receiver's copy ``delivered`` attached."""
    b = "----=_Part_8120_2711346"
    return (f"From: Yahoo! Mail AntiSpam Feedback <feedback@arf.mail.yahoo.com>\r\n"
            f"To: {to}\r\nSubject: Email Feedback Report for IP 192.0.2.1\r\n"
            f"MIME-Version: 1.0\r\n"
            f'Content-Type: multipart/report; report-type="feedback-report";\r\n\tboundary="{b}"\r\n'
            f"\r\n--{b}\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            f"This is an email abuse report for an email message from example.com\r\n"
            f"\r\n--{b}\r\nContent-Type: message/feedback-report\r\n\r\n"
            f"Feedback-Type: abuse\r\nUser-Agent: Yahoo!-Mail-Feedback/2.0\r\nVersion: 0.1\r\n"
            f"Original-Rcpt-To: redacted@yahoo.com\r\n"
            f"\r\n--{b}\r\nContent-Type: message/rfc822\r\n\r\n").encode() \
        + delivered.rstrip(b"\r\n") + f"\r\n\r\n--{b}--\r\n".encode()
