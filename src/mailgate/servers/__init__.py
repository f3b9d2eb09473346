"""Protocol servers: SMTP (submission, later MX), IMAP and POP3. They translate protocol to service calls."""
