"""fedocr: privacy-preserving Chinese + English OCR."""
__version__ = "0.1.0"
