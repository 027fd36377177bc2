"""Data in: the datasets (built-in and prepared folders), the input pipeline (tfds data source -> grain) and
the image decoders. Kept import-light: no TensorFlow here."""
