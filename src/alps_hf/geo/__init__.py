"""Large rasters: window geometry, seams, GeoTIFF readers, stitching, patch cutting."""
