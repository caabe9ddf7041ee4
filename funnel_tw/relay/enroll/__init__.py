"""Enrollment by token on the relay: invitations, the enroll listener, live application."""
