"""Pure tensor math and the name registry every family of functions uses."""
