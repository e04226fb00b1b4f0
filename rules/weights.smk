from conclugen.config import configured_weights


rule weights:
    """Every configured weight into the caches the jobs read, verified (needs internet).

    No output: `snakemake weights` (`make weights`) always runs it, so a cache emptied later
    is filled again; the job's log lists each weight, where it is and its size."""
    log:
        "results/logs/weights.log",
    conda:
        "../envs/models.yaml"
    resources:
        mem_mb=8000,
        runtime=growing_runtime(2 * 60),
    params:
        weights=[tuple(w) for w in configured_weights(config)],
    script:
        "../workflow/scripts/weights.py"
