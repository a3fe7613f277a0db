"""Large rasters, one module per idea; imports run windows <- seams, windows <- geotiff <- readers <- stitch.

- `windows`: pure window geometry (planning, cores, finding a row's window again).
- `seams`: the centre-ownership seam rule on a window's masks (torch).
- `geotiff`: GeoTIFF and other GDAL rasters through rasterio (bands, scaling, no-data, CRS).
- `readers`: which reader a file gets, and windows of PNG / JPEG scenes.
- `stitch`: per-window label maps back into one scene raster (`--stitch`).
- `patches`: mmsegmentation-style fixed-size patch cutting (iSAID, Potsdam recipes).
"""
