"""microgpt: train and run tiny GPT language models on any text file with one item per line."""

__version__ = '0.1.0'
