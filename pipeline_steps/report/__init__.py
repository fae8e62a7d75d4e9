"""Results out: the report's tables, figures and HTML, the papers' targets beside the runs, the
ledger of reproduced runs, and DVC's metrics and plots files. May import every layer below it,
`methods` included; never `pipeline`.
"""
