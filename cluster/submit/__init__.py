"""`career submit` and `career jobs`: the Jobs API client (`client`) and the commands (`job`)."""
