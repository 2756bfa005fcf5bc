"""fastmix's ops, declared once with torch.library; one file per op."""
