"""Rule weights: every configured weight into the caches the jobs read, then verified.

The workflow sets :data:`conclugen.weights.OFFLINE_ENV` (``HF_HUB_OFFLINE=1`` ...) for every job
(Snakefile); this job is the one that fetches, so it turns them off before a hub library reads
them. See :func:`conclugen.weights.fill_caches`.
"""

import os

from conclugen.weights import OFFLINE_ENV

os.environ.update(dict.fromkeys(OFFLINE_ENV, "0"))

from conclugen.logs import logged  # noqa: E402
from conclugen.weights import fill_caches  # noqa: E402

with logged(snakemake.log[0]) as log:
    rows = fill_caches(snakemake.params.weights, log)
    log.info("%d weights in the caches; the jobs read them with the hubs offline", len(rows))
