"""Business rules. Views and jobs call these; they never touch Flask request state."""
