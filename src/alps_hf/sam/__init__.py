"""SAM side of pass 1: point grids, mask records, the mask generator, mask features, segment maps."""
