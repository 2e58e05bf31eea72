"""The local runtime behind `gossamer up`."""
