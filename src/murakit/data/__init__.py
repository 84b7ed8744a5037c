"""data stage of the murakit pipeline."""
