"""Built-in handlers: stdout (for operators), kafka (transactional forward), sql (upserts)."""
