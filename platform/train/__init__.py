"""One trial: the Tune trainable, the Ray Train worker loop, its reports, and Ray's private parts."""
