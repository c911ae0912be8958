"""Identity preparation: from a user's clip or photo to everything adaptation and rendering need
(architecture reference §5; upstream ``data_gen/utils``)."""
