"""What the experiment entry points of evaluation share: frozen features, fills, image sets, probe records."""
