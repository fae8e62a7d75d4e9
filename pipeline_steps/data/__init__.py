"""Images in: the datasets the pipeline knows (`catalog`), decoded from disk to arrays (`datasets`),
the search splits and batches on the device (`search_data`), and the identity of the data a run
used (`identity`). May import `common` and `spaces`.
"""
