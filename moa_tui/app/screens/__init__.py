"""The app's screens besides the main one: help, dialogs, downloads, a past turn."""
