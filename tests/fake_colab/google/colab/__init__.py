"""A stand-in for Colab's ``google.colab`` package, so the tests can run the notebook's Colab-only cells.

Driven by environment variables that the tests set for the kernel:
- ``LAB7_FAKE_UPLOAD``: the file ``files.upload()`` returns (copied into the working folder, as Colab does);
  empty: the student pressed Cancel; ``fail``: the widget fails, as it does when a browser blocks third-party
  cookies;
- ``LAB7_FAKE_DOWNLOADS``: a file to which ``files.download(path)`` appends the absolute path, one per line;
- ``LAB7_FAKE_NOTEBOOK``: the notebook (.ipynb) that ``_message.blocking_request("get_ipynb")`` returns.
"""
