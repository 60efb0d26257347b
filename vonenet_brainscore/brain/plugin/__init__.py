"""Brain-Score model plugins generated from this package: the files, the code they carry, a local install."""
