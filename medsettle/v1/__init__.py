"""The wire contract `medsettle.v1`, generated from proto/ by proto/generate.py."""
