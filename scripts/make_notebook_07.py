"""Writes notebooks/07_depth.ipynb (clean: no outputs). Edit the cells here and rerun:
    python scripts/make_notebook_07.py"""
from notebook_cells import code, md, parameters, setup, write

cells = [
md(r"""# 07 · Figure 5b and Table 2: alignment, uniformity and depth prediction

Figure 5a asks whether the two properties predict *classification*. Figure 5b asks the same of a dense task:
predicting the **depth** of every pixel from a frozen encoder's spatial feature maps.

**The paper's setting.** Wang & Isola trained 64 encoders (SmallAlexNet, 400 epochs, batch 128, output dimension 128)
on the RGB images of NYU-Depth-V2's 795 labeled training frames, with the STL-10 augmentations, under the
contrastive loss (over $\tau$) and under weighted $\mathcal{L}_\mathsf{align} + \mathcal{L}_\mathsf{uniform}$ (over the
weights, $\alpha$ and $t$). A depth decoder (transposed-convolution blocks that double the resolution and halve
the channels, then a 3×3 convolution to one channel; Adam, lr 3·10⁻³, 120 epochs) is trained on the frozen conv5 or
conv4 activations and scored by its mean squared error on the 654 test frames.

**The claims.** *Figure 5b*: plotted at $(\mathcal{L}_\mathsf{uniform}(t=2), \mathcal{L}_\mathsf{align}(\alpha=2))$, the
encoders with the lowest depth MSE sit in the lower-left corner. *Table 2*: the best align + uniform encoder
(0.7014 conv5 / 0.7592 conv4) matches the best contrastive one (0.7024 / 0.7575).

**Here.** The quick profile trains on rendered RGB-D scenes (below) instead of NYU; the paper profile runs the 64
NYU configurations. This notebook trains nothing: it reads the `depth` sweep's results table (`make depth`)."""),
parameters(),
setup("07_depth", """from hypersphere import depth, plots, profiles, report
from hypersphere.items import fig5, load_results, say, table2""",
      """TARGETS = {"val_conv5_mse": "conv5", "val_conv4_mse": "conv4"}  # the panels: depth MSE from each tap
PAPER_COLS = {"val_conv5_mse": "paper_val_conv5_mse", "val_conv4_mse": "paper_val_conv4_mse"}"""),
md(r"""## The data

A few training images above their depth maps (near is bright). On the quick profile these are the embedded
stand-in: rooms with a tiled floor, striped or chequered walls and one to four boxes and spheres, rendered by ray
casting from a random camera height, pitch and position. The depth is exact, and the image shows it the way a photo
does: perspective and texture gradients on the floor and walls, occlusion between objects, shading and cast
shadows. The decoder's target is depth standardised with the training split's mean and standard deviation, so an
MSE of 1 is what predicting the mean depth everywhere scores."""),
code('''cloud_all, note = load_results(P.results_dir, "depth", need=["align", "uniform", "epochs", *TARGETS])
print(note)
dataset = cloud_all["dataset"].iloc[0]
data = depth.load_dataset(dataset, data_dir)
print(f"{dataset}: {len(data.train_images)} train / {len(data.val_images)} validation images of "
      f"{tuple(data.train_images.shape[-2:])} px, depth {data.depth_mean:.2f} +- {data.depth_std:.2f} m")
fig = plots.rgbd_grid(data.train_images, data.train_depth, n=8, title=f"{dataset}: RGB and depth")
plots.save_figure(fig, "fig5b_data", P.figures_dir)
plt.show()'''),
md(r"""## The cloud of encoders

Random-init encoders (no training) are kept apart: they are the baseline every trained encoder should beat, not
points of the figure. Encoders whose features collapsed to (nearly) one point ($\mathcal{L}_\mathsf{uniform}$ near 0)
are drawn, but the statistics below are computed without them, since their uniformity is degenerate. The image-blind
baselines show what the decoder gets from the image at all: predicting the training mean depth map scores
`val_pixel_mean_mse`."""),
code('''trained, random, by = table2.split(cloud_all)
cloud, targets, kept = fig5.usable(trained, TARGETS)
fit_cloud = table2.non_collapsed(cloud)
print(f"{kept}; {len(fit_cloud)} not collapsed; {len(random)} random-init encoders")
summary = cloud.groupby("family")[["align", "uniform", *targets]].median().add_prefix("median ")
summary.insert(0, "encoders", cloud["family"].value_counts())
baselines = cloud_all[["val_mean_mse", "val_pixel_mean_mse"]].median().rename("image-blind baseline MSE")
display(summary.round(3), baselines.round(3), random[["seed", "align", "uniform", *targets]].round(3))'''),
md(r"""## Figure 5b

Each trained encoder at ($\mathcal{L}_\mathsf{uniform}(t=2)$, $\mathcal{L}_\mathsf{align}(\alpha=2)$) on validation
positive pairs, coloured by the decoder's validation MSE from conv5 (left, the paper's panel) and from conv4
(right). Blue is better (lower error). Markers: + contrastive only, o align + uniform only, △ all three."""),
code('''fig = fig5.figure(cloud, targets, better="lower", label="validation depth MSE")
plots.save_figure(fig, "fig5b_metrics_vs_depth", P.figures_dir)
plt.show()'''),
md(r"""## How well do the two metrics predict depth error?

As for Figure 5a, on the encoders that did not collapse: the Spearman rank correlation of each metric (and of their
sum, and of a linear combination fitted out of sample) with the MSE, with bootstrap 95% intervals. The paper's claim
is that *lower* metrics go with *lower* error, i.e. positive correlations with the MSE; in the table the correlation
is reported against the score "lower = better", so the paper's direction is a positive rho against MSE."""),
code('''stats, fits = fig5.statistics(fit_cloud, targets, better="lower", n_boot=S["n_boot"])
stats.to_csv(P.figures_dir / "fig5b_statistics.csv", index=False)
for col, fit in fits.items():
    a, b, c = fit["weights"]
    print(f"{targets[col]}: -MSE ~ {a:.3f} {b:+.3f} L_align {c:+.3f} L_uniform (CV R^2 {fit['r2']:.2f})")
for col, name in targets.items():
    k = fig5.corner(fit_cloud, col, better="lower")
    print(f"{name}: {k['top_in_corner']} of the best {k['top']} in the lower-left quadrant ({k['share_all']:.0%} of all)")
stats.round(3)'''),
md(r"""## Ours against the paper, encoder by encoder

Only the paper profile repeats the paper's 64 configurations; there each of our MSEs is set against the paper's
for the same configuration (the scales differ unless the depth normalisation matches the paper's, which it does not
state; the ranks are what to compare)."""),
code('''agreement = fig5.ours_vs_paper(cloud, {c: p for c, p in PAPER_COLS.items() if c in targets})
if agreement:
    fig = fig5.figure_vs_paper(cloud, PAPER_COLS, targets)
    plots.save_figure(fig, "fig5b_ours_vs_paper", P.figures_dir)
    plt.show()
else:
    print(f"profile {P.name}: no paper_* columns (only the paper profile repeats the paper's encoders)")
pd.DataFrame(agreement).T.round(3)'''),
md(r"""## Table 2: the best encoder of each family

Within each family, the trained encoder with the lowest cross-validated conv5 MSE on the training split is selected
(the paper's rule: its appendix table's CV column picks Table 2's rows); its validation MSE from conv5 and conv4 is
reported beside the paper's numbers in parentheses. The paper's encoders are all contrastive-only or
align + uniform-only, so Table 2 has these two rows."""),
code('''table = table2.select(trained, by)
table.to_csv(P.figures_dir / "table2.csv", index=False)
pretty = table2.pretty(table)
caption = f"Best encoder of each loss family, selected by {by}; validation depth MSE, ours (paper). Profile {P.name}."
(P.figures_dir / "table2.md").write_text(f"{caption}\\n\\n" + report.markdown_table(pretty, floatfmt=".4f"))
(P.figures_dir / "table2.tex").write_text(pretty.to_latex(index=False, caption=caption.replace("_", r"\\_"), label="tab:table2"))
print((P.figures_dir / "table2.md").read_text())'''),
md(r"""## Verdicts

* **Figure 5b** holds when, for each tap, the fitted combination of the two metrics ranks the non-collapsed
  encoders' MSE out of sample with a 95% interval on the paper's side of zero, and both fitted weights point the
  paper's way (lower metric, lower error).
* **Table 2** holds when the selected align + uniform encoder's conv5 MSE is at most 2% (relative) above the
  selected contrastive encoder's.
* **Trained beats random** holds when both selected encoders have a conv5 MSE at least 5% (relative) below every
  random-init encoder's: without it, the cloud would only show how the decoder copes with random features."""),
code('''verdicts = [fig5.judge("Figure 5b", fit_cloud, targets, stats, fits, better="lower", agreement=agreement,
                      figures=["fig5b_metrics_vs_depth", "fig5b_statistics"] + (["fig5b_ours_vs_paper"] if agreement else [])),
            table2.judge(table), table2.versus_random(table, random)]
report.write_verdicts(P.figures_dir, "07_depth", P.name, verdicts)
for v in verdicts:
    print(say(v))'''),
]
write("07_depth", cells)
