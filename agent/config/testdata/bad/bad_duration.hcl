consul {}
interval = "fast"
