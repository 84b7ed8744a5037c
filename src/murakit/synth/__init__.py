"""The synthetic radiograph generator: MURA-layout datasets with known labels and problems."""
