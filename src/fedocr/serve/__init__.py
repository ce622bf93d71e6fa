"""Serving on CPU: ONNX export, the inference engine, page-to-lines segmentation, the result cache,
and the FastAPI app (REST API + web page) with model hot swap.

Heavy modules (FastAPI, ONNX Runtime) are imported by the submodules that need them, so
`fedocr ocr` does not pay for the web stack.
"""
