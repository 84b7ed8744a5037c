"""train stage of the murakit pipeline."""
