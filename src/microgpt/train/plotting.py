"""loss.png from metrics.jsonl: training loss (smoothed) and validation loss against step."""

import json


def plot_metrics(metrics_path, png_path, smoothing=50):
    import matplotlib
    matplotlib.use('Agg')  # files only; no display needed
    import matplotlib.pyplot as plt

    with open(metrics_path, encoding='utf-8') as f:
        records = [json.loads(line) for line in f if line.strip()]
    if not records:
        return None
    steps = [r['step'] for r in records]
    train = [r['train_loss'] for r in records]
    # a one-document loss is noisy: show its running mean over `smoothing` steps
    window = max(1, min(smoothing, len(train) // 10 or 1))
    smoothed, running = [], 0.0
    for i, loss in enumerate(train):
        running += loss - (train[i - window] if i >= window else 0.0)
        smoothed.append(running / min(i + 1, window))
    val = [(r['step'], r['val_loss']) for r in records if 'val_loss' in r]

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
