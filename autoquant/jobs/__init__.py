"""The product's jobs, built on the engine: run (or resume) a search and export its best plan, re-choose an
export, workers joining a study, scheduled re-optimization against the registry."""
