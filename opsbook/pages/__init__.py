"""The HTML pages a person reads: what report.html adds to pytest-html's page, and the status page.

`present` holds what they share with each other (the outcomes in opsbook's words, the order in
which rows are read, the verdict, values with their units, the style); `status_page` renders
the status page from a findings.json document alone, so that merged shards or deployments can
produce it too.
"""
