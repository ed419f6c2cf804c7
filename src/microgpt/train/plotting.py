"""loss.png from metrics.jsonl: training loss (smoothed) and validation loss against step."""


def plot_metrics(metrics_path, png_path, smoothing=50):
    import matplotlib
    matplotlib.use('Agg')  # files only; no display needed
    import matplotlib.pyplot as plt

    from .run import read_metrics_records
    records = read_metrics_records(metrics_path, "move it away to plot the run")
    if not records:
        return None
    steps = [step for step, _, _ in records]
    train = [loss for _, loss, _ in records]
    # a one-document loss is noisy: show its running mean over `smoothing` steps
    window = max(1, min(smoothing, len(train) // 10 or 1))
    smoothed, running = [], 0.0
    for i, loss in enumerate(train):
        running += loss - (train[i - window] if i >= window else 0.0)
        smoothed.append(running / min(i + 1, window))
    val = [(step, loss) for step, _, loss in records if loss is not None]

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, train, color='tab:blue', alpha=0.2, linewidth=0.5, label='train (per step)')
    ax.plot(steps, smoothed, color='tab:blue', label=f'train (mean of {window} steps)')
    if val:
        ax.plot(*zip(*val), 'o-', color='tab:orange', label='validation')
    ax.set_xlabel('step')
    ax.set_ylabel('loss (nats per character)')
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    plt.close(fig)
    return png_path
