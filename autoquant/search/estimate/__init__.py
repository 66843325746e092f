"""What a plan costs and how wrong it will be, without building the plan: the per-layer, per-choice error table
(layer_errors.py), the per-layer latency table (latency_table.py), a plan's cost (cost.py: bitops or latency), and the
additive error model and its calibration against trials (error_model.py). The tables are measured once per study
(on the layers alone, and a few small models built for the purpose) and cached on disk; the exact
one-layer-at-a-time table, which builds and scores a whole model per layer, is search/sensitivity.py."""
