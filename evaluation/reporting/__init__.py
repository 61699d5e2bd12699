"""What reads only result records: which runs a cell takes, the paper's tables, figures, the HTML page."""
