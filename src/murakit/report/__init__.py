"""report stage of the murakit pipeline."""
