"""Long documents: sliding-window attention, long-ification, classification mechanisms, scaling, summarization."""
