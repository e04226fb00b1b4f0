"""Rule face_preview: a contact sheet of face crops per dataset, for the report."""

import pandas as pd

from conclugen.data.manifest import read_manifest
from conclugen.faces import contact_sheet
from conclugen.logs import logged

with logged(snakemake.log[0]) as log:
    clips, _ = read_manifest(snakemake.input.manifest)
    faces = pd.concat([pd.read_parquet(p) for p in snakemake.input.faces], ignore_index=True)
    contact_sheet(clips, faces, snakemake.output[0], n_clips=snakemake.params.clips)
    log.info("contact sheet of %d clips -> %s", faces["sample_id"].nunique(), snakemake.output[0])
