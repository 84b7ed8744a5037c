"""explain stage of the murakit pipeline."""
