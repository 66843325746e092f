"""What autoquant writes for people to read: the Pareto table and plot, the sensitivity table and heat map,
studies compared side by side, and a study's progress bar."""
