"""serve stage of the murakit pipeline."""
