"""ConCluGen reproduction pipeline: all real logic lives here, free of Snakemake imports.

Workflow scripts under ``workflow/scripts/`` only wire Snakemake's ``snakemake`` object to the
functions of this package, so every stage can be unit-tested without Snakemake.
"""

__version__ = "0.1.0"
