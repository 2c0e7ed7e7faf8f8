"""export stage (see the issues); imports torch only inside its functions."""
