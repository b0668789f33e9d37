"""What explanations look like on image files: a checkpoint and files in, pictures and pages
out. Uses explain (the maps, the explorer's records, the attention statistics) and inference.

    overlay_files    overlays for image files (vit explain, the end of every run), their colour key
    overlay_pages    vit explain's grid pages (mistakes first) and index.html
    attention_files  the explorer page and the attention statistics of a checkpoint and files
"""
