"""gujingxiao's 2019 submission tools, under their original names."""
