"""Feature visualisation and the paper's interpretability test (Table 2).

    from fu_fast import vis
    v = vis.visualize(model, "layer2.0", [3, 17], steps=256)   # images maximising two units
    vis.total_variation(v.images), vis.frequency_total_variation(v.images)
    vis.permutation_test(thin_scores, wide_scores)             # one-sided, rank-based, 100,000 shufflings
    thin = vis.load_subject("thin", "runs/resnet18-0.25")      # or model="resnet18", width=0.25
    wide = vis.load_subject("wide", "runs/resnet18-4")
    vis.run_experiment(thin, wide, "vis_out")                  # visualize.json, table2.md, grids/
"""

from .experiment import Subject, check_settings, load_subject, markdown_table, run_experiment
from .grid import draw_grid, write_grid
from .render import FourierImage, Transforms, Visualization, random_transform, unit_activation, visualize
from .score import frequency_total_variation, magnitude_spectrum, total_variation
from .stats import PermutationResult, permutation_test, rank_data

__all__ = ["FourierImage", "Transforms", "Visualization", "visualize", "random_transform", "unit_activation",
           "total_variation", "frequency_total_variation", "magnitude_spectrum", "permutation_test",
           "PermutationResult", "rank_data", "Subject", "check_settings", "load_subject", "run_experiment",
           "markdown_table", "draw_grid", "write_grid"]
