"""evaluate stage of the murakit pipeline."""
