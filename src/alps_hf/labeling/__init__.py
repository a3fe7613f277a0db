"""`alps-hf label` / `recluster`: config, inputs, work folder, pass 1, clustering, pass 2, output folder."""
